"""Training a byte-level RWKV-4 in NumPy, with a hand-written backward pass.

    model.py       the forward pass over a batch (rwkv_np/rwkv4/reference.py's functions, eqs. 11-18) and,
                   beside each forward, its backward; loss_and_grads, evaluate
    wkv_grad.py    eq. 14's forward scan (the shared compiled step, rwkv4/kernels.wkv_step) and its backward
    init.py        fresh parameters, one rule per row of rwkv_np/rwkv4/params.py's table
    variant.py     architecture variants for retrained ablations (experiments/ablations.py): block
                   order, sublayers, parameters set, frozen or tied across channels
    optim.py       AdamW, gradient clipping, the learning-rate schedule
    data.py        the training text as bytes, tiny shakespeare by default, random batches
    checkpoint.py  the model file (--out) and the training checkpoint (<out>.ckpt), one atomic unit
    run.py         `python -m rwkv_np train`: options, their checks, the loop, the asset export
"""
