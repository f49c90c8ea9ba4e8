"""Database operations shared by the command-line tools and the in-VPC Lambda functions:
migrations (`migrations`), credentials on the database side (`credentials`), Secrets Manager
rotation with alternating users (`rotation`), smoke checks (`checks`) and the Lambda entry
points (`handlers`). Everything reaches PostgreSQL through `scripts.lib.db`."""
