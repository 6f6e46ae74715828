from tunelab.diagnostics import overfitting_warnings


def _history(train_losses, val_losses):
    rows = []
    for epoch, (t, v) in enumerate(zip(train_losses, val_losses), start=1):
        rows.append({"step": epoch * 10 - 5, "epoch": epoch - 0.5, "train_loss": t})
        rows.append({"step": epoch * 10, "epoch": epoch, "validation_loss": v})
    return rows


def test_rising_validation_loss_while_training_loss_falls():
    warnings = overfitting_warnings(_history([0.6, 0.4, 0.2, 0.1], [0.5, 0.45, 0.5, 0.6]), "f1", None, None,
                                    False, False)
    assert len(warnings) == 1
    assert "validation loss rose for 2 evaluations" in warnings[0] and "dropout" in warnings[0]


def test_gap_and_early_stopping():
    warnings = overfitting_warnings(_history([0.5, 0.4], [0.5, 0.45]), "f1", 0.99, 0.80, True, False)
    assert any("gap 0.190" in w for w in warnings)
    assert any("early stopping fired" in w for w in warnings)


def test_healthy_run_has_no_warnings():
    assert overfitting_warnings(_history([0.6, 0.4, 0.3], [0.5, 0.4, 0.35]), "f1", 0.85, 0.82, False, False) == []


def test_lower_is_better_metrics():
    assert overfitting_warnings([], "mse", 0.1, 0.5, False, True)[0].startswith("overfitting: mse")


def test_gaps_follow_the_metric_scale():
    # Perplexity 11.1 on training vs 13.4 on validation: 20% apart, within what splits differ by.
    assert overfitting_warnings([], "perplexity", 11.14, 13.38, False, True) == []
    assert overfitting_warnings([], "perplexity", 5.0, 13.0, False, True)[0].startswith("overfitting: perplexity")
    assert overfitting_warnings([], "chrf", 45.0, 40.0, False, False, scale=100) == []  # 5 chrF points
    assert overfitting_warnings([], "chrf", 60.0, 40.0, False, False, scale=100)[0].startswith("overfitting: chrf")
