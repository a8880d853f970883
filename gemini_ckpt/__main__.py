from gemini_ckpt.cli import run

run()
