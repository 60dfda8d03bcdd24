"""``infergate pd-sidecar``: the decode pod's sidecar of prefill/decode disaggregation."""
