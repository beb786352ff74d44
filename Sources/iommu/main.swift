import IOMMUCLI

IOMMUCommand.main()
