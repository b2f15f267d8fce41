"""The Kedro-only code, kept together: project hooks, the catalog's own dataset types and the
checks that read Kedro's parameters. The library beside this package never imports Kedro."""
