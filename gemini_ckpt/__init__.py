"""gemini_ckpt."""
