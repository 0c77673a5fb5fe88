"""Placeholder: activation estimate (filled in below)."""


def print_activation_estimates(rank, targets):
    print("  activations: (estimate not yet implemented)")
