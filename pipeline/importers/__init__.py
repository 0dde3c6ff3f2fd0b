"""Importers: corpora in layouts people already hold (lhotse, Hugging Face audio, the ALARM corpus, CSV) to our manifest."""
