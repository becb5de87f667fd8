"""Torch-free pcap side of mmae-hf: read captures, assemble flows, anonymise, compute statistics."""
