"""Pure tensor code: networks, losses and optimisers. Nothing here reads or writes files."""
