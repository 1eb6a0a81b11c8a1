"""VibeVoice-Realtime-0.5B (`model_type: "vibevoice_streaming"`): our own PyTorch modules, presets, the
loader of Microsoft's original checkpoint layout, the PyTorch reference of the windowed streaming loop,
voice presets (prefilled KV caches) and the component specs for export."""
