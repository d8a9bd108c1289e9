"""The prompt library: saved prompts with versions, style presets (A1111 styles.csv), negative-prompt templates,
templates with wildcards, prompt history, the prompt builder and the seed explorer's requests.

`PromptLibrary` (library.py) is the one object the services and tabs hold; each module here owns one of those
jobs and knows nothing of the UI.
"""
