"""batchgen: a spreadsheet of prompts to images over Stable Diffusion web UI servers."""
