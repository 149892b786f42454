"""Orders service: orders, their lines and the saga that confirms or cancels them."""
