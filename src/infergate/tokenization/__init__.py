"""Tokenizers and vLLM block hashes shared by the simulator and the gateway.

Both sides must agree token for token and hash for hash: the simulator announces KV blocks by vLLM's
block hashes over its tokenizer's ids, and a gateway that routes on those announcements recomputes
them from the request. This package therefore imports nothing else from infergate, so either side
can use it without depending on the other.

* ``protocol.TextTokenizer``: what a tokenizer offers (encode, decode, chat template, vocabulary
  bounds, filler ids for simulated output).
* ``builtin.Tokenizer``: the deterministic default (no files, no downloads).
* ``hf.HFTokenizer``: a HuggingFace ``tokenizer.json`` loaded with the ``tokenizers`` library
  (optional extra ``tokenizer``); ``load.load_tokenizer(path)`` picks one of the two.
* ``requests``: the token ids a vLLM server computes for a completions or chat request body.
* ``blockhash``: vLLM 0.33's prefix-cache block hashes as a pure function.
"""
