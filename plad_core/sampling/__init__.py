"""Sampling backends. Each backend turns prompts into rows of the shared samples schema."""
