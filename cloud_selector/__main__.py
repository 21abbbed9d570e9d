from cloud_selector.cli import main
raise SystemExit(main())
