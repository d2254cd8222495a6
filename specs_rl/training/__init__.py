"""Training parts: reusable pieces of the ``train/`` recipes (PRM, ORM, draft distillation).

    prm_data   row adapters (TRL stepwise, ProcessBench, toy-math) with one-line validation errors
    prm        PRMConfig, tokenization at step ends, the collator, metrics, the trainer builder, step scoring
    pairs      chosen/rejected pairs from graded solutions (outcome reward model), their encoding
    distill    padded-vocabulary alignment, sampling with a generator, the draft-acceptance proxy
    models     ``tiny:`` model specs and hub/local loading, saving merged weights or adapters
    args       TRL-style argument parsing with the project's ``--config file.yaml key=value`` convention
    data       JSONL reading, the shared data folder, held-out splits by problem

Nothing here imports trl, peft, datasets or wandb at module level: the recipes pay for them when they run.
"""
