"""Action-conditioned predictor: block-causal mask, KV-cached == full-window rollout, losses."""

from __future__ import annotations

import pytest
import torch

from jepa_agent.losses import rollout_loss, teacher_forcing_loss
from jepa_agent.models.ac_predictor import ACPredictor, ac_predictor_config, block_causal_mask

D, A, P = 16, 3, 4


def make(num_tokens=2, proprio_dim=0, **kw):
    torch.manual_seed(0)
    kw = dict(dim=32, depth=2, num_heads=4, max_steps=12) | kw
    return ACPredictor(D, A, num_tokens=num_tokens, proprio_dim=proprio_dim, **kw).eval()


def test_mask_is_block_causal():
    m = block_causal_mask(3, 2)
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m, expected)
    assert torch.equal(block_causal_mask(1, 2, past_steps=2), torch.ones(2, 6, dtype=torch.bool))


@pytest.mark.parametrize("proprio_dim", [0, P])
def test_future_inputs_do_not_change_past_outputs(proprio_dim):
    model = make(proprio_dim=proprio_dim)
    B, T, t = 2, 6, 3
    z, a = torch.randn(B, T, 2, D), torch.randn(B, T, A)
    p = torch.randn(B, T, P) if proprio_dim else None
    out, pout = model(z, a, p)
    z2, a2 = z.clone(), a.clone()
    z2[:, t:] += 1.0
    a2[:, t:] -= 1.0
    p2 = None if p is None else p.clone().index_fill_(1, torch.arange(t, T), 5.0)
    out2, pout2 = model(z2, a2, p2)
    assert torch.allclose(out[:, :t], out2[:, :t], atol=1e-6)  # earlier steps untouched
    assert not torch.allclose(out[:, t:], out2[:, t:], atol=1e-3)  # later steps do change
    if proprio_dim:
        assert torch.allclose(pout[:, :t], pout2[:, :t], atol=1e-6)
    # the action at step t conditions the prediction made at step t
    a3 = a.clone()
    a3[:, t] += 1.0
    assert not torch.allclose(model(z, a3, p)[0][:, t], out[:, t], atol=1e-4)


@pytest.mark.parametrize("context", [1, 3])
@pytest.mark.parametrize("ctx_batch", [1, 6])
def test_preallocated_cache_equals_concatenation(context, ctx_batch, monkeypatch):
    """Outside autograd, imagination appends keys into preallocated buffers instead of concatenating:
    the same rollout bit for bit, and a second call does not see the first one's keys."""
    from jepa_agent.models.ac_predictor import KVCache

    model = make(proprio_dim=P)
    model.set_delta_scale(torch.rand(D) + 0.1)
    S, H = 6, 5
    z_ctx = torch.randn(ctx_batch, context, 2, D)
    a_ctx = torch.randn(ctx_batch, context - 1, A) if context > 1 else None
    p_ctx = torch.randn(ctx_batch, context, P)
    actions = torch.rand(S, H, A) * 2 - 1
    calls = []
    real = KVCache.preallocate
    monkeypatch.setattr(KVCache, "preallocate", staticmethod(lambda *a: calls.append(1) or real(*a)))
    with torch.no_grad():
        zb, pb = model.imagine(z_ctx, actions, a_ctx, p_ctx)
        zb2, _ = model.imagine(z_ctx, actions.flip(0), a_ctx, p_ctx)
    with torch.inference_mode():
        zi, _ = model.imagine(z_ctx, actions, a_ctx, p_ctx)
    zg, _ = model.imagine(z_ctx, actions, a_ctx, p_ctx)  # grad mode: concatenation (autograd-safe)
    assert len(calls) == 3 and zg.requires_grad  # not with grad
    model.preallocate_cache = False  # concatenate, as with grad
    with torch.no_grad():
        zc, pc = model.imagine(z_ctx, actions, a_ctx, p_ctx)
    assert torch.equal(zb, zc) and torch.equal(pb, pc) and torch.equal(zi, zb)
    if ctx_batch == 1:  # no stale keys from the first call
        torch.testing.assert_close(zb2, zb.flip(0), atol=1e-5, rtol=0)
    assert len(calls) == 3
    torch.testing.assert_close(zg.detach(), zb, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cannot hold 6 cached tokens in buffers of 4"):
        real(
            KVCache([torch.zeros(2, 3, 6, 1)], [torch.zeros(2, 3, 6, 1)], 2), 1, (2, 3, 4, 5), torch.zeros(1)
        )


@pytest.mark.parametrize("context", [1, 3])
@pytest.mark.parametrize("proprio_dim", [0, P])
@pytest.mark.parametrize("ctx_batch", [1, 5])
@pytest.mark.parametrize("residual", [True, False])
def test_cached_rollout_equals_full_window(context, proprio_dim, ctx_batch, residual):
    model = make(proprio_dim=proprio_dim, residual=residual)
    model.set_delta_scale(torch.rand(D) + 0.1)
    S, H = 5, 4
    z_ctx = torch.randn(ctx_batch, context, 2, D)
    a_ctx = torch.randn(ctx_batch, context - 1, A) if context > 1 else None
    p_ctx = torch.randn(ctx_batch, context, P) if proprio_dim else None
    actions = torch.rand(S, H, A) * 2 - 1
    with torch.inference_mode():
        zc, pc = model.imagine(z_ctx, actions, a_ctx, p_ctx, use_cache=True)
        zf, pf = model.imagine(z_ctx, actions, a_ctx, p_ctx, use_cache=False)
    assert zc.shape == (S, H, 2, D)
    torch.testing.assert_close(zc, zf, atol=1e-5, rtol=0)
    if proprio_dim:
        assert pc.shape == (S, H, P)
        torch.testing.assert_close(pc, pf, atol=1e-5, rtol=0)


def test_step_path_equals_teacher_forced_window():
    model = make(num_tokens=1)
    B, T = 3, 5
    z, a = torch.randn(B, T, 1, D), torch.randn(B, T, A)
    full, _ = model(z, a)
    cache, outs = None, []
    for t in range(T):
        out, _, cache = model.step(z[:, t], a[:, t], cache=cache)
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs, 1), full, atol=1e-5, rtol=0)
    # a prefilled cache continues exactly like stepping from scratch
    _, _, pre = model(z[:, :3], a[:, :3], return_cache=True)
    out3, _, _ = model.step(z[:, 3], a[:, 3], cache=pre)
    torch.testing.assert_close(out3, full[:, 3], atol=1e-5, rtol=0)


def test_rollout_grad_matches_between_paths():
    model = make(num_tokens=1).train()
    z_ctx = torch.randn(1, 2, 1, D)
    a_ctx = torch.randn(1, 1, A)
    grads, a0 = [], torch.randn(4, 3, A)
    for use_cache in (True, False):
        actions = a0.clone().requires_grad_(True)
        z, _ = model.imagine(z_ctx, actions, a_ctx, use_cache=use_cache)
        z.square().sum().backward()
        grads.append(actions.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("loss", ["l1", "mse"])
def test_losses_train(loss):
    torch.manual_seed(0)
    model = ACPredictor(D, A, num_tokens=1, dim=32, depth=2, num_heads=2, max_steps=8)
    W = torch.randn(A, D) * 0.3

    def batch():  # linear latent dynamics z_{t+1} = z_t + a_t W
        a = torch.rand(16, 5, A) * 2 - 1
        z0 = torch.randn(16, 1, D)
        z = torch.cat([z0, z0 + torch.cumsum(a @ W, 1)], 1).unsqueeze(2)  # [16, 6, 1, D]
        return z, a

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    z, a = batch()
    with torch.no_grad():
        tf0 = teacher_forcing_loss(model, z, a, loss=loss).item()
        ro0 = rollout_loss(model, z, a, k=3, loss=loss).item()
    for _ in range(60):
        z, a = batch()
        total = teacher_forcing_loss(model, z, a, loss=loss) + rollout_loss(model, z, a, k=3, loss=loss)
        opt.zero_grad()
        total.backward()
        opt.step()
    z, a = batch()
    with torch.no_grad():
        assert teacher_forcing_loss(model, z, a, loss=loss).item() < 0.7 * tf0
        assert rollout_loss(model, z, a, k=3, context=2, loss=loss).item() < 0.7 * ro0
    with pytest.raises(ValueError, match="loss"):
        teacher_forcing_loss(model, z, a, loss="huber")


def test_config_roundtrip_and_errors():
    model = make(proprio_dim=P, mlp_ratio=2.0)
    cfg = ac_predictor_config(model)
    clone = ACPredictor(**cfg)
    clone.load_state_dict(model.state_dict())
    assert cfg["mlp_ratio"] == 2.0 and cfg["proprio_dim"] == P
    with pytest.raises(ValueError, match="tokens of dim"):
        model(torch.randn(1, 2, 3, D), torch.randn(1, 2, A), torch.randn(1, 2, P))
    with pytest.raises(ValueError, match="proprio"):
        model(torch.randn(1, 2, 2, D), torch.randn(1, 2, A))
    with pytest.raises(ValueError, match="max_steps"):
        model.imagine(torch.randn(1, 1, 2, D), torch.randn(2, 13, A), proprio_ctx=torch.randn(1, 1, P))
    with pytest.raises(ValueError, match="actions_ctx"):
        model.imagine(torch.randn(1, 2, 2, D), torch.randn(2, 3, A), proprio_ctx=torch.randn(1, 2, P))
    with pytest.raises(ValueError, match="num_heads"):
        ACPredictor(D, A, dim=30, num_heads=4)
    with pytest.raises(ValueError, match="rollout_loss"):
        rollout_loss(model, torch.randn(1, 3, 2, D), torch.randn(1, 2, A), k=3, proprio=torch.randn(1, 3, P))
