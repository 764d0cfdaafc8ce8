"""One false-alarm rate for the statistical checks that draw from the OS-seeded generator.

The noise, randomized-response and bit-uniformity tests draw from `SecureRandom()`, seeded by
the operating system, so every run tests fresh samples and a failure is never an artefact of
one fixed seed. The price is that a correct build fails such a check by chance with its
alpha. The suite makes 53 of them per run (44 in tests/kernels/test_noise.py, 8 in
tests/kernels/test_rr.py, 1 in tests/kernels/test_rng.py); at alpha = 0.001 each, a correct
build would turn CI red about one run in twenty (1 - 0.999**53 = 5.2%), and one did: the
Gaussian tail test's mean came out 3.38 standard errors off. The sampler is not biased: 800
further runs of that test's setting gave means whose z-scores had mean 0.03 and spread 1.02,
and 10,000 runs of the plain sampler counted 20 beyond 3 standard errors where 27 are expected.

So each check runs at ALPHA = 1e-6: by the union bound the whole suite fails a correct build
by chance less than once in 10,000 runs. The power lost is small at the 10**6 samples the
tests draw: a variance 1% off is still 7 standard errors away, and a wrong law fails the
chi-square by far more. Checks on `SecureRandom._for_tests(seed)` streams are deterministic
and keep their own stated confidence.
"""

from __future__ import annotations

from scipy import stats

ALPHA = 1e-6
Z = float(stats.norm.isf(ALPHA / 2))  # two-sided: 4.89
