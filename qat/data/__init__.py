"""Real data that ships as system packages on this machine, read without downloading.

``qat.data.austen``: Jane Austen's six novels from the Debian/CRAN package ``janeaustenr``
(an R lazy-load database, read by ``qat.data.rds`` without R).
"""
