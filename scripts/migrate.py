"""Apply db/migrations/*.sql to DATABASE_URL (same as `echelon migrate`)."""

from echelon.cli import main

if __name__ == "__main__":
    main(["migrate"])
