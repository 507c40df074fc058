"""eatlab: zero-shot cross-lingual NER through entity-aligned translation (EAT).

Data flow, one subpackage per step: data -> llm -> eat -> eval -> analysis -> tracking.
"""

__version__ = "0.1.0"
