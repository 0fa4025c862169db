"""Networks of ISA4D: the causal video VAE (`isa4d.models.vae`) and the ISA diffusion transformer."""
