"""The Hugging Face backend (draft, target, scorer, PRM over transformers models). Placeholder until it lands."""
