# shim: removed after the layout merge
from plad_core.evaluation.metrics import (ROUGE_TYPES, assign_buckets, bucket_label, bucket_ranges,  # noqa: F401
                                          default_length_edges, evaluation_metrics, paired_comparison,
                                          reference_words, repeated_ngram_share, rouge_f1, subset_metrics,
                                          system_summary)
