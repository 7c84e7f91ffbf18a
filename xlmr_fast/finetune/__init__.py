"""Cross-lingual fine-tuning: readers (XNLI/PAWS-X TSV, PAN-X, CoNLL-2002, SQuAD JSON), tasks
(features and decoding), metrics (accuracy, entity F1, SQuAD/MLQA F1/EM) and run (the loop,
`xlmr-fast finetune` and `xlmr-fast evaluate`)."""
