from skeptic.cli import main

raise SystemExit(main())
