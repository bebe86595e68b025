"""RADIO as a Hugging Face model: adaptor heads, conversion of official checkpoints, image processor."""
