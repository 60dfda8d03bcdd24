"""infergate.lora."""
