"""gld-jax: Google Landmark Recognition training in JAX/Flax."""
