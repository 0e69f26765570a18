from lenstui.cli import main

raise SystemExit(main())
