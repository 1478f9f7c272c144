"""Keys of a transformers ``config.json`` that a ConvNeXt config reads and ignores."""
from __future__ import annotations

__all__ = ["HF_GENERIC_KEYS"]

# Keys of a transformers config.json that are not ConvNeXt fields (PretrainedConfig's generic
# attributes and bookkeeping): read and ignored. Any other unknown key is a typo and an error.
HF_GENERIC_KEYS = frozenset({
    "_name_or_path", "_commit_hash", "_attn_implementation_autoset", "_output_attentions", "add_cross_attention",
    "architectures", "bad_words_ids", "begin_suppress_tokens", "bos_token_id", "chunk_size_feed_forward",
    "cross_attention_hidden_size", "decoder_start_token_id", "diversity_penalty", "do_sample", "dtype",
    "early_stopping", "encoder_no_repeat_ngram_size", "eos_token_id", "exponential_decay_length_penalty",
    "finetuning_task", "forced_bos_token_id", "forced_eos_token_id", "id2label", "is_decoder", "is_encoder_decoder",
    "label2id", "length_penalty", "max_length", "min_length", "model_type", "no_repeat_ngram_size",
    "num_beam_groups", "num_beams", "num_return_sequences", "output_attentions", "output_scores", "pad_token_id",
    "prefix", "problem_type", "pruned_heads", "remove_invalid_values", "repetition_penalty", "return_dict",
    "return_dict_in_generate", "sep_token_id", "stage_names", "suppress_tokens", "task_specific_params",
    "temperature", "tf_legacy_loss", "tie_encoder_decoder", "tie_word_embeddings", "tokenizer_class", "top_k",
    "top_p", "torch_dtype", "torchscript", "transformers_version", "typical_p", "use_bfloat16", "use_cache",
})
