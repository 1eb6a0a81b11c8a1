from vvtrt.cli import main

if __name__ == "__main__":  # not when a spawned process (the engine process) imports it as __mp_main__
    main()
