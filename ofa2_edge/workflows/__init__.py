"""Use cases that span pipeline steps (the main job); the CLI only parses, calls and prints."""
