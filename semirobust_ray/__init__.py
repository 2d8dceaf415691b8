"""semirobust_ray: find the minimal trailing subnetwork f_b that needs adversarial training.

Implements Algorithm 1 of Craig, Andle, Nowak & Yasaei Sekeh ("Does the half adversarial
robustness represent the whole?"): adversarially train the whole network once (Acc*), freeze its
first part f*_a, adversarially train only the last |f_b| trainable layers, and measure the
class-conditional mutual information between consecutive layers (the rho values).
"""

__version__ = "0.1.0"
