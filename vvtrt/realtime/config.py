"""`RealtimeConfig`: the numbers that define one VibeVoice-Realtime model, read
from a preset or from an original `config.json` (`model_type: "vibevoice_streaming"`), and turned into the
transformers sub-configs our modules are built from (Qwen2 for both LMs, the diffusion head, the decoder)."""
from __future__ import annotations

from dataclasses import dataclass

from vvtrt.errors import ModelError
from vvtrt.model import original_layout

TEXT_WINDOW = 5      # text tokens per window
SPEECH_WINDOW = 6    # speech frames per window
# `<|image_pad|>` of the Qwen2.5 tokenizer: the one-token negative (unconditional) prompt of the CFG branch
QWEN_NEG_TOKEN = 151655


@dataclass(frozen=True)
class RealtimeConfig:
    """Shapes of one Realtime model. `ratios`/`depths` are in the encoder's order (as transformers'
    tokenizer config takes them); the decoder mirrors them."""

    name: str
    hidden: int
    lm_layers: int          # text LM (the lower layers, no final norm)
    tts_layers: int         # TTS LM (the upper layers, own final norm)
    q_heads: int
    kv_heads: int
    ffn: int
    vocab: int
    context: int            # max positions: the loop stops when the TTS cache reaches it
    head_layers: int
    head_ffn: int
    rope_theta: float = 1e6
    rms_eps: float = 1e-6
    head_rms_eps: float = 1e-5
    latent_dim: int = 64
    num_filters: int = 32
    ratios: tuple[int, ...] = (2, 2, 4, 5, 5, 8)
    depths: tuple[int, ...] = (3, 3, 3, 3, 3, 3, 8)
    tokenizer_rms_eps: float = 1e-5
    neg_token_id: int = QWEN_NEG_TOKEN

    @property
    def head_dim(self) -> int:
        return self.hidden // self.q_heads

    @property
    def hop(self) -> int:
        out = 1
        for r in self.ratios:
            out *= r
        return out

    def qwen2(self, layers: int):
        """transformers' `Qwen2Config` of one of the two LMs."""
        from transformers import Qwen2Config

        return Qwen2Config(hidden_size=self.hidden, num_hidden_layers=layers, num_attention_heads=self.q_heads,
                           num_key_value_heads=self.kv_heads, intermediate_size=self.ffn, vocab_size=self.vocab,
                           max_position_embeddings=self.context, rms_norm_eps=self.rms_eps,
                           tie_word_embeddings=False, use_sliding_window=False,
                           rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta})

    def head(self):
        from transformers.models.vibevoice.configuration_vibevoice import VibeVoiceDiffusionHeadConfig

        return VibeVoiceDiffusionHeadConfig(hidden_size=self.hidden, latent_size=self.latent_dim,
                                            num_hidden_layers=self.head_layers, intermediate_size=self.head_ffn,
                                            rms_norm_eps=self.head_rms_eps)

    def decoder(self):
        from transformers import VibeVoiceAcousticTokenizerConfig

        return VibeVoiceAcousticTokenizerConfig(
            hidden_size=self.latent_dim, num_filters=self.num_filters, downsampling_ratios=list(self.ratios),
            depths=list(self.depths), rms_norm_eps=self.tokenizer_rms_eps).decoder_config

    def to_json(self) -> dict:
        from dataclasses import asdict

        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _sub(raw: dict, key: str) -> dict:
    sub = raw.get(key)
    if not isinstance(sub, dict):
        raise ModelError(f"config.json: `{key}` must be an object, got {type(sub).__name__}")
    return sub


def config_from_original(raw: dict, name: str = "checkpoint") -> RealtimeConfig:
    """The `RealtimeConfig` of an original Realtime config.json; options our modules do not implement are
    refused by name (the same checks as the 1.5B original layout)."""
    if raw.get("model_type") != "vibevoice_streaming":
        raise ModelError(f"config.json: model_type {raw.get('model_type')!r} is not 'vibevoice_streaming'")
    text = original_layout._text_config(_sub(raw, "decoder_config"))
    tok = original_layout._tokenizer_config(_sub(raw, "acoustic_tokenizer_config"), "acoustic_tokenizer_config", True)
    head = original_layout._head_config(_sub(raw, "diffusion_head_config"), text["hidden_size"])
    tts_layers = raw.get("tts_backbone_num_hidden_layers")
    total = text["num_hidden_layers"]
    if not isinstance(tts_layers, int) or isinstance(tts_layers, bool) or not 0 < tts_layers < total:
        raise ModelError(f"config.json: `tts_backbone_num_hidden_layers` = {tts_layers!r} must be an integer "
                         f"between 1 and decoder_config.num_hidden_layers - 1 ({total - 1})")
    latent = _sub(raw, "diffusion_head_config").get("latent_size", tok["hidden_size"])
    if latent != tok["hidden_size"] or raw.get("acoustic_vae_dim", latent) != latent:
        raise ModelError(f"config.json: the diffusion latent size {latent} and acoustic_vae_dim "
                         f"{raw.get('acoustic_vae_dim')} must equal the acoustic tokenizer's vae_dim {tok['hidden_size']}")
    rope = text["rope_parameters"]["rope_theta"]
    return RealtimeConfig(
        name=name, hidden=text["hidden_size"], lm_layers=total - tts_layers, tts_layers=tts_layers,
        q_heads=text["num_attention_heads"], kv_heads=text["num_key_value_heads"], ffn=text["intermediate_size"],
        vocab=text["vocab_size"], context=text["max_position_embeddings"], head_layers=head["num_hidden_layers"],
        head_ffn=head["intermediate_size"], rope_theta=rope, rms_eps=text["rms_norm_eps"],
        head_rms_eps=head["rms_norm_eps"], latent_dim=tok["hidden_size"], num_filters=tok["num_filters"],
        ratios=tuple(tok["downsampling_ratios"]), depths=tuple(tok["depths"]),
        tokenizer_rms_eps=tok["rms_norm_eps"], neg_token_id=int(raw.get("neg_token_id", QWEN_NEG_TOKEN)))


def original_config_json(cfg: RealtimeConfig) -> dict:
    """An original-layout config.json for `cfg` (what Microsoft's release holds; used to write test
    checkpoints and converted presets)."""
    depths = "-".join(map(str, cfg.depths))
    return {
        "model_type": "vibevoice_streaming",
        "tts_backbone_num_hidden_layers": cfg.tts_layers,
        "acoustic_vae_dim": cfg.latent_dim,
        "decoder_config": {
            "model_type": "qwen2", "hidden_size": cfg.hidden, "num_hidden_layers": cfg.lm_layers + cfg.tts_layers,
            "num_attention_heads": cfg.q_heads, "num_key_value_heads": cfg.kv_heads, "intermediate_size": cfg.ffn,
            "vocab_size": cfg.vocab, "max_position_embeddings": cfg.context, "rms_norm_eps": cfg.rms_eps,
            "rope_theta": cfg.rope_theta, "tie_word_embeddings": False, "use_sliding_window": False,
            "hidden_act": "silu", "torch_dtype": "bfloat16"},
        "acoustic_tokenizer_config": {
            "vae_dim": cfg.latent_dim, "encoder_n_filters": cfg.num_filters, "decoder_n_filters": cfg.num_filters,
            "encoder_ratios": list(reversed(cfg.ratios)), "decoder_ratios": list(reversed(cfg.ratios)),
            "encoder_depths": depths, "decoder_depths": None, "causal": True, "mixer_layer": "depthwise_conv",
            "layernorm": "RMSNorm", "layernorm_eps": cfg.tokenizer_rms_eps, "fix_std": 0.5, "std_dist_type": "gaussian",
            "conv_bias": True, "channels": 1, "disable_last_norm": True, "conv_norm": "none",
            "layernorm_elementwise_affine": True},
        "diffusion_head_config": {
            "hidden_size": cfg.hidden, "head_layers": cfg.head_layers, "head_ffn_ratio": cfg.head_ffn / cfg.hidden,
            "rms_norm_eps": cfg.head_rms_eps, "latent_size": cfg.latent_dim, "prediction_type": "v_prediction",
            "ddpm_num_steps": 1000, "ddpm_num_inference_steps": 20, "ddpm_beta_schedule": "cosine"},
    }
