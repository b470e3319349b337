"""Images for the model: preprocessing records and image folders."""
