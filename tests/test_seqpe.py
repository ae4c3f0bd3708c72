"""SeqPE (Wang et al., 2025, arXiv 2506.13277) checked from outside the project: the authors' digit conventions and
losses (ghrua/seqpe, text_seqpe/src/transformers/custom_modules/pe_utils.py `PeUtils.pos2seq`, `prepare_seqpe_data`,
`get_digit_num`; text_seq_pe/src/transformers/custom_modules/pe_criterion.py `SeqPeContrastiveCriterion`,
`SeqPeTransferCriterion`; pe_sampler.py `SeqPeContrstiveDataSampler._prepare_batch`, `SeqPeTransferDataSampler`)
re-implemented here independently, brute-force digit round trips, the two objectives, and bad input."""
import pytest
import torch
import torch.nn.functional as F
from posexplorer.core import get, names
from posexplorer.encodings.learned.seqpe import (SeqPE, contrastive_batch, contrastive_loss, digit_count, digits_to_position,
                               position_digits, transfer_batch, transfer_loss)
from posexplorer.tools.train_seqpe import train_seqpe

pytestmark = pytest.mark.filterwarnings("ignore:reduction:UserWarning")  # F.kl_div(reduction='mean'), as the authors call it

# ---- the authors' conventions, written again -----------------------------------------------------------------------------
def code_pos2seq(number, max_digits, pad_value=0):
    "PeUtils.pos2seq with is_left_padding=True: the decimal string's digits, left-padded; mask 1 on real digits"
    digits = [int(c) for c in str(number)]
    n_pad = max_digits - len(digits)
    return [pad_value] * n_pad + digits, [0] * n_pad + [1] * len(digits)

def code_prepare(raw_pos_list, max_digits):
    "PeUtils.prepare_seqpe_data: tuples (2D positions) concatenate the per-axis sequences"
    seqs, masks = [], []
    for pos in raw_pos_list:
        parts = [code_pos2seq(p, max_digits) for p in (pos if isinstance(pos, tuple) else (pos,))]
        seqs.append(sum((s for s, _ in parts), [])); masks.append(sum((m for _, m in parts), []))
    return torch.tensor(seqs), torch.tensor(masks, dtype=torch.float)

def code_contrastive(pivot_pe, neg_pe, labels, scale=1.0, num_heads=1):
    "SeqPeContrastiveCriterion.forward: CE of pivot·neg dot products; with seqpe_multi_head_loss, one row of logits per head"
    B = pivot_pe.size(0)
    if num_heads > 1:
        neg = neg_pe.reshape(B, -1, num_heads, pivot_pe.size(-1) // num_heads).permute(0, 2, 1, 3)  # [B, H, N, D/H]
        piv = pivot_pe.reshape(B, 1, num_heads, -1).permute(0, 2, 1, 3)  # [B, H, 1, D/H]
        logits = (piv @ neg.transpose(-1, -2)).view(B * num_heads, -1)
        labels = labels.unsqueeze(-1).repeat(1, num_heads).reshape(-1)
    else: logits = (pivot_pe.unsqueeze(1) @ neg_pe.reshape(B, -1, pivot_pe.size(-1)).transpose(1, 2)).view(B, -1)
    return F.cross_entropy(logits * scale, labels)

def code_transfer(main_pe, trans_pe, scale=1.0, beta=1.0, num_heads=None):
    "SeqPeTransferCriterion.forward, metric='kl_div' (F.kl_div's default reduction: mean over all entries); num_heads: seqpe_multi_head_loss"
    if num_heads is not None:
        B, n, _ = main_pe.shape
        main_pe, trans_pe = (x.reshape(B, n, num_heads, -1).permute(0, 2, 1, 3) for x in (main_pe, trans_pe))
    train = F.log_softmax(main_pe @ main_pe.transpose(-1, -2) * scale, -1)
    trans = F.log_softmax(trans_pe @ trans_pe.transpose(-1, -2) * scale, -1)
    loss = beta * (F.kl_div(input=trans, target=train.detach(), log_target=True)
                   + F.kl_div(input=train.detach(), target=trans, log_target=True))
    if beta < 1: loss = loss + (1 - beta) * (F.kl_div(input=trans.detach(), target=train, log_target=True)
                                             + F.kl_div(input=train, target=trans.detach(), log_target=True))
    return loss

# ---- digits --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_digits_brute_force(k):
    "Every position below 10**k round-trips and matches the decimal string and the authors' mask"
    p = torch.arange(10 ** k)
    tok, real = position_digits(p, k)
    assert tok.shape == real.shape == (10 ** k, k) and tok.dtype == torch.long and real.dtype == torch.bool
    assert torch.equal(digits_to_position(tok), p)
    step = max(1, 10 ** k // 997)  # the string comparison on a spread of positions, all of them for k <= 3
    for q in range(0, 10 ** k, step if k > 3 else 1):
        s, m = code_pos2seq(q, k)
        assert tok[q].tolist() == s and real[q].tolist() == [bool(v) for v in m]

def test_digits_other_bases():
    p = torch.arange(4096)
    for base, k in ((2, 12), (16, 3), (7, 5)):
        assert torch.equal(digits_to_position(position_digits(p, k, base)[0], base), p)
    assert position_digits(torch.tensor([10]), 4, 2)[0].tolist() == [[1, 0, 1, 0]]

def test_authors_debug_example():
    "The repository's own example (pe_utils.py, _test_prepare_seqpe_data_and_get_pos_of_seqpe): 1, 12, ..., 12345, k = 5"
    raw = [1, 12, 123, 1234, 12345]
    seq, mask = code_prepare(raw, 5)
    tok, real = position_digits(torch.tensor(raw), 5)
    assert torch.equal(tok, seq) and torch.equal(real.float(), mask)
    assert tok[2].tolist() == [0, 0, 1, 2, 3]  # the docstring of pos2seq: 123 -> [0,0,1,2,3]

def test_authors_2d_concatenation():
    "2D positions: the per-axis sequences are concatenated, row first (prepare_seqpe_data on tuples)"
    raw = [(1, 1), (12, 12), (123, 1), (1234, 1234), (12345, 123)]
    seq, _ = code_prepare(raw, 5)
    enc = SeqPE(dim=8, max_digits=5, n_axes=2)
    assert torch.equal(enc._tokens(torch.tensor(raw).T), seq)

def test_digit_count_matches_config():
    "get_digit_num(M) = len(str(M - 1)); the GPT-2 run's PE_MAX_POSITION 20000 goes with SEQPE_MAX_DIGITS 5 (pe_config.json)"
    assert digit_count(20000) == 5 and digit_count(10000) == 4 and digit_count(1) == 1
    for M in (1, 9, 10, 11, 99, 100, 101, 20000): assert digit_count(M) == len(str(M - 1))

# ---- samplers ------------------------------------------------------------------------------------------------------------
def test_contrastive_batch_labels():
    "The label is the candidate nearest the pivot (argmin of squared distance, _prepare_batch); the pivot is never a candidate"
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        pv, cd, lb = contrastive_batch(32, 17, 777, g)
        assert (cd != pv[:, None]).all() and cd.min() >= 0 and cd.max() < 777
        d2 = (cd - pv[:, None]).double() ** 2
        assert torch.equal(d2.gather(1, lb[:, None])[:, 0], d2.min(-1).values)

def test_transfer_batch_ranges():
    "Offsets in [0, L) without repeats; starts in [L/4, M - L) (SeqPeTransferDataSampler.init_dataset)"
    g = torch.Generator().manual_seed(4)
    mo, tr = transfer_batch(50, 10, 40, 500, g)
    start = tr - mo
    assert (mo >= 0).all() and (mo < 40).all() and all(len(set(r.tolist())) == 10 for r in mo)
    assert (start == start[:, :1]).all() and start.min() >= 10 and start.max() < 460

# ---- the objectives ------------------------------------------------------------------------------------------------------
def test_losses_match_authors():
    torch.manual_seed(0)
    piv, cand, lab = torch.randn(6, 12), torch.randn(6, 9, 12), torch.randint(0, 9, (6,))
    for s in (1.0, 0.3):
        torch.testing.assert_close(contrastive_loss(piv, cand, lab, s), code_contrastive(piv, cand.flatten(0, 1), lab, s))
        torch.testing.assert_close(contrastive_loss(piv, cand, lab, s, n_heads=3), code_contrastive(piv, cand.flatten(0, 1), lab, s, num_heads=3))
    main, trans = torch.randn(4, 7, 12), torch.randn(4, 7, 12, requires_grad=True)
    ours, theirs = transfer_loss(main, trans, beta=1.0), code_transfer(main, trans)
    torch.testing.assert_close(ours, theirs)  # the authors' reduction by default
    torch.testing.assert_close(transfer_loss(main, trans, reduction="row"), 7 * theirs)  # per row: n = 7 times theirs
    g1, = torch.autograd.grad(ours, trans); g2, = torch.autograd.grad(code_transfer(main, trans), trans)
    torch.testing.assert_close(g1, g2)

def test_transfer_loss_issue_case():
    "The audit's case (issue 17): N = 6 windows, n = 12 offsets, d = 20, scale 1.7; ours was n = 12 times theirs"
    g = torch.Generator().manual_seed(17)
    main, trans = torch.randn(2, 6, 12, 20, generator=g, dtype=torch.float64)
    theirs = code_transfer(main, trans, scale=1.7, beta=0.8)
    assert abs(theirs.item() - 0.0266633268) < 1e-9  # the re-implementation's value on this seed (float64)
    assert abs(transfer_loss(main, trans, scale=1.7).item() - theirs.item()) < 1e-12
    assert abs(transfer_loss(main, trans, scale=1.7, reduction="row").item() / theirs.item() - 12) < 1e-12
    m32, t32 = main.float(), trans.float()  # float32, as the authors train: agreement to 1e-6
    assert abs(transfer_loss(m32, t32, scale=1.7).item() - code_transfer(m32, t32, scale=1.7, beta=0.8).item()) < 1e-6

def test_multi_head_transfer_matches_authors():
    "seqpe_multi_head_loss=True, as the training scripts build the criterion: per-head Gram matrices, mean over B·H·n·n"
    torch.manual_seed(1)
    main, trans = torch.randn(3, 8, 20, requires_grad=True), torch.randn(3, 8, 20, requires_grad=True)
    for h in (1, 2, 4, 5):
        ours, theirs = transfer_loss(main, trans, scale=0.7, n_heads=h), code_transfer(main, trans, scale=0.7, beta=0.8, num_heads=h)
        torch.testing.assert_close(ours, theirs)
        for a, b in zip(torch.autograd.grad(ours, (main, trans)), torch.autograd.grad(theirs, (main, trans))):
            torch.testing.assert_close(a, b)  # β = 0.8: both sides get the authors' gradient
    assert not torch.allclose(transfer_loss(main, trans, n_heads=4), transfer_loss(main, trans))

def test_transfer_teacher_is_detached():
    main, trans = torch.randn(2, 5, 4, requires_grad=True), torch.randn(2, 5, 4, requires_grad=True)
    transfer_loss(main, trans, beta=1.0).backward()
    assert main.grad is None and torch.isfinite(trans.grad).all() and trans.grad.abs().sum() > 0
    main.grad = trans.grad = None
    transfer_loss(main, trans).backward()  # β = 0.8, the scripts' default: the teacher moves too
    assert main.grad is not None and main.grad.abs().sum() > 0

def _batches(enc, seed=0):
    g = torch.Generator().manual_seed(seed)
    return contrastive_batch(8, 8, 500, g), transfer_batch(2, 8, 32, 500, g)

@pytest.mark.parametrize("which", ["contrastive", "transfer"])
def test_objective_finite_differentiable_and_lower(which):
    torch.manual_seed(0)
    enc = SeqPE(dim=16, max_digits=3, hidden_dim=16, n_heads=2, seed=1)
    (pv, cd, lb), (mo, tr) = _batches(enc)
    def loss():
        if which == "contrastive": return contrastive_loss(enc.embed(pv), enc.embed(cd), lb)
        return transfer_loss(enc.embed(mo), enc.embed(tr))
    with torch.no_grad(): enc.proj.weight.mul_(50.0)  # spread the embeddings so the transfer loss is not ~0 at the start
    l0 = loss()
    assert torch.isfinite(l0) and l0 > 0
    l0.backward()
    grads = [p.grad for p in enc.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and enc.digit_embed.weight.grad.abs().sum() > 0
    opt = torch.optim.Adam(enc.parameters(), lr=3e-3)
    for _ in range(15):
        opt.zero_grad(); l = loss(); l.backward(); opt.step()
    with torch.no_grad(): l1 = loss()
    assert l1 < 0.9 * l0.detach()

def test_train_seqpe_runs_and_lowers_contrastive():
    torch.manual_seed(0)
    enc = SeqPE(dim=16, max_digits=3, hidden_dim=16, n_heads=2)
    h = torch.tensor(train_seqpe(enc, steps=60, context=32, max_position=200, n_pivots=8, n_candidates=8, n_windows=2,
                                 n_offsets=8, lr=5e-3, progress=False))
    assert h.shape == (60, 2) and torch.isfinite(h).all() and h[-15:, 0].mean() < h[:15, 0].mean()

# ---- the encoder ---------------------------------------------------------------------------------------------------------
def test_registered_defaults_and_seed():
    enc = get("seqpe")
    assert "seqpe" in names("additive") and isinstance(enc, torch.nn.Module) and enc.dim == 64 and enc.max_digits == 5
    assert enc.card.arxiv == "2506.13277" and enc.card.properties == {}
    p = torch.tensor([0, 3, 17, 99_999])
    assert torch.equal(get("seqpe").embed(p), enc.embed(p)) and not torch.equal(get("seqpe", seed=1).embed(p), enc.embed(p))
    assert torch.equal(enc(p), enc.embed(p))

@pytest.mark.parametrize("dim", [2, 6, 32, 7])
def test_any_dim_and_batch_shape(dim):
    enc = get("seqpe", dim=dim)
    e = enc.embed(torch.arange(12).view(3, 4))
    assert e.shape == (3, 4, dim) and e.dtype == torch.float32 and torch.isfinite(e).all()
    torch.testing.assert_close(e.view(12, dim), enc.embed(torch.arange(12)))

def test_inputs_untouched_and_int32():
    enc = get("seqpe", dim=8)
    p = torch.tensor([5, 50, 500], dtype=torch.int32); p0 = p.clone()
    e = enc.embed(p)
    assert torch.equal(p, p0) and torch.equal(e, enc.embed(p0.long()))

def test_causal_digit_reading():
    "The slots read left to right (SEQPE_ATTN_DIRECTION causal): only the read-out token sees the last digit"
    enc = get("seqpe", dim=8)
    captured = []
    h = enc.layers[-1].register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    enc.embed(torch.tensor([12340, 12349])); h.remove()
    x = captured[0]  # (2, k + 1, hidden)
    assert torch.allclose(x[0, :4], x[1, :4], atol=1e-6) and not torch.allclose(x[0, 4:], x[1, 4:])

def test_two_axes():
    enc = get("seqpe", dim=8, n_axes=2, max_digits=2)
    p = torch.tensor([[1, 2, 3], [4, 5, 6]])  # (A, T)
    assert enc.embed(p).shape == (3, 8) and enc.default_positions(5).shape == (2, 5)
    assert enc.embed(enc.default_positions(5)).shape == (5, 8)
    assert not torch.allclose(enc.embed(p), enc.embed(p.flip(0)))

# ---- bad input -----------------------------------------------------------------------------------------------------------
_enc = SeqPE(dim=8, max_digits=3)
_enc2 = SeqPE(dim=8, max_digits=3, n_axes=2)
BAD = [
    (lambda: _enc.embed(torch.tensor([3, -1])), ValueError, ">= 0"),
    (lambda: _enc.embed(torch.tensor([1000])), ValueError, "max_digits"),
    (lambda: _enc.embed(torch.tensor([1.0, 2.0])), TypeError, "integers"),
    (lambda: _enc.embed(torch.tensor([True, False])), TypeError, "positions"),
    (lambda: _enc.embed(torch.tensor([], dtype=torch.long)), ValueError, "empty"),
    (lambda: _enc.embed([1, 2, 3]), TypeError, "positions"),
    (lambda: _enc.embed(torch.tensor(5)), ValueError, "positions"),
    (lambda: _enc2.embed(torch.arange(4)), ValueError, "n_axes"),
    (lambda: _enc2.embed(torch.zeros(3, 4, dtype=torch.long)), ValueError, "n_axes"),
    (lambda: position_digits(torch.arange(3), 0), ValueError, "max_digits"),
    (lambda: position_digits(torch.arange(3), 2, base=1), ValueError, "base"),
    (lambda: SeqPE(dim=0), ValueError, "dim"),
    (lambda: SeqPE(dim=True), TypeError, "dim"),
    (lambda: SeqPE(dim=8.0), TypeError, "dim"),
    (lambda: SeqPE(hidden_dim=30, n_heads=4), ValueError, "n_heads"),
    (lambda: SeqPE(max_digits=0), ValueError, "max_digits"),
    (lambda: SeqPE(seed=-1), ValueError, "seed"),
    (lambda: SeqPE(n_axes=0), ValueError, "n_axes"),
    (lambda: contrastive_loss(torch.randn(3, 4), torch.randn(3, 5, 6), torch.zeros(3, dtype=torch.long)), ValueError, "candidate_pe"),
    (lambda: transfer_loss(torch.randn(2, 3, 4), torch.randn(2, 4, 4)), ValueError, "transfer_pe"),
    (lambda: transfer_loss(torch.randn(2, 3, 6), torch.randn(2, 3, 6), n_heads=4), ValueError, "n_heads"),
    (lambda: transfer_loss(torch.randn(2, 3, 6), torch.randn(2, 3, 6), n_heads=0), ValueError, "n_heads"),
    (lambda: transfer_loss(torch.randn(2, 3, 6), torch.randn(2, 3, 6), n_heads=2.0), TypeError, "n_heads"),
    (lambda: transfer_loss(torch.randn(2, 3, 6), torch.randn(2, 3, 6), beta=1.5), ValueError, "beta"),
    (lambda: transfer_loss(torch.randn(2, 3, 6), torch.randn(2, 3, 6), reduction="sum"), ValueError, "reduction"),
    (lambda: contrastive_loss(torch.randn(3, 6), torch.randn(3, 5, 6), torch.zeros(3, dtype=torch.long), n_heads=4), ValueError, "n_heads"),
    (lambda: digit_count(0), ValueError, "max_position"),
    (lambda: train_seqpe(SeqPE(dim=4), steps=1, context=64, max_position=70, progress=False), ValueError, "max_position"),
    (lambda: train_seqpe(SeqPE(dim=4), steps=0, progress=False), ValueError, "steps"),
]

@pytest.mark.parametrize("call,exc,word", BAD)
def test_bad_input(call, exc, word):
    with pytest.raises(exc, match=word): call()
