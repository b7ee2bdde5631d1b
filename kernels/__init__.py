"""Kernels for adapter hot paths (fused LoRA, multi-adapter gather), each with a PyTorch reference.

Planned (see the project issues); until then verticals runs entirely on peft's PyTorch layers.
"""
