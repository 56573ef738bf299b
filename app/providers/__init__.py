"""LLM providers: one streaming protocol, an OpenAI-compatible client and a scripted fake."""
