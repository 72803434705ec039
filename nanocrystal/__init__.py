"""nanocrystal: size and shape of colloidal nanocrystals from their synthesis recipes."""
