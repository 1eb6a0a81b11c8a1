"""Traceable wrappers around the transformers VibeVoice modules: one `nn.Module` per exported component,
with all state (KV cache, streaming convolution state, noise) as explicit inputs and outputs. The same
modules are the torch backend of the runtime and the reference side of parity checks."""
