from kpc_trio.cli import main

raise SystemExit(main())
