"""Entry points and the supervisor: the `acerl` command and the programs that start components."""
