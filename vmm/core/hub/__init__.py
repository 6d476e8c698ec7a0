"""The Hugging Face Hub: one client, file selection, the transfer engine, pull, update checks."""
