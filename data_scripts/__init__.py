"""Corpus download and preparation scripts: each module writes JSONL manifests for asr.data."""
