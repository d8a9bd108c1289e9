from bench.run import main

if __name__ == "__main__":  # the curation section starts worker processes, which import this module again
    main()
