"""Shared test settings."""

#: A CI-sized search on the bundled digits data: the small CNN, a short PGD, a 3 + 3 epoch
#: baseline. Test modules add their own depths, k, MI and retry settings on top; modules that
#: share these fields also share one cached baseline.
DIGITS_SEARCH = dict(
    model="smallcnn",
    dataset="digits",
    attack="pgd",
    eps=0.1,
    alpha=0.03,
    steps=3,
    batch_size=64,
    lr=0.05,
    baseline_epochs=3,
    baseline_adv_epochs=3,
    epochs=2,
    seeds=1,
)
