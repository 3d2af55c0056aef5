"""The tasks: datasets with their checksums (``data``, ``datafiles``) and the prompts whose hidden states the
transformer chapters read (``icl``: zero-shot and k-shot prompts, content-free prompts, LAMA facts)."""
