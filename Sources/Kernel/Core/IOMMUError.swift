/// Errors of the IOMMU core and its drivers, each mapped to the errno Linux returns for the
/// same condition (include/uapi/asm-generic/errno-base.h). A failed call changes nothing.
public enum IOMMUError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The request is malformed (-EINVAL).
    case invalidArgument(String)
    /// The domain cannot serve this device: a soft failure, the caller may try another
    /// domain (-EINVAL; the `attach_dev` contract in include/linux/iommu.h).
    case incompatible(String)
    /// The object does not exist, was destroyed, or is not attached (-ENOENT).
    case notFound(String)
    /// In use, or the slot is taken (-EBUSY).
    case busy(String)
    /// Already present (-EEXIST).
    case exists(String)
    /// Memory allocation failed (-ENOMEM).
    case noMemory(String)
    /// A non-memory resource ran out: DIDs, PASIDs (-ENOSPC).
    case noSpace(String)
    /// A value is beyond a limit the device or unit imposes (-EOVERFLOW).
    case overflow(String)
    /// An address outside the domain's aperture (-ERANGE).
    case outOfRange(String)
    /// The driver or device does not support the operation (-EOPNOTSUPP).
    case notSupported(String)
    /// The device is gone or the hardware refused (-ENODEV).
    case noDevice(String)
    /// The hardware did not complete an invalidation in time (-ETIMEDOUT).
    case timedOut(String)
    /// The hardware reported an error (-EIO).
    case ioError(String)
    /// An error of a user API layer above the core (iommufd), with its own errno and name
    /// (EPERM, EFAULT, EADDRINUSE, EMSGSIZE, ...).
    case user(errno: Int32, name: String, message: String)

    /// The positive errno value Linux uses for this error.
    public var errno: Int32 {
        switch self {
        case .invalidArgument, .incompatible: return 22 // EINVAL
        case .notFound: return 2                        // ENOENT
        case .busy: return 16                           // EBUSY
        case .exists: return 17                         // EEXIST
        case .noMemory: return 12                       // ENOMEM
        case .noSpace: return 28                        // ENOSPC
        case .overflow: return 75                       // EOVERFLOW
        case .outOfRange: return 34                     // ERANGE
        case .notSupported: return 95                   // EOPNOTSUPP
        case .noDevice: return 19                       // ENODEV
        case .timedOut: return 110                      // ETIMEDOUT
        case .ioError: return 5                         // EIO
        case .user(let errno, _, _): return errno
        }
    }

    /// The errno's symbolic name.
    public var errnoName: String {
        switch self {
        case .invalidArgument, .incompatible: return "EINVAL"
        case .notFound: return "ENOENT"
        case .busy: return "EBUSY"
        case .exists: return "EEXIST"
        case .noMemory: return "ENOMEM"
        case .noSpace: return "ENOSPC"
        case .overflow: return "EOVERFLOW"
        case .outOfRange: return "ERANGE"
        case .notSupported: return "EOPNOTSUPP"
        case .noDevice: return "ENODEV"
        case .timedOut: return "ETIMEDOUT"
        case .ioError: return "EIO"
        case .user(_, let name, _): return name
        }
    }

    /// Every `errnoName` an error can have (scenario files name them).
    public static let errnoNames = ["EINVAL", "ENOENT", "EBUSY", "EEXIST", "ENOMEM", "ENOSPC", "EOVERFLOW", "ERANGE",
                                    "EOPNOTSUPP", "ENODEV", "ETIMEDOUT", "EIO",
                                    // The user API's own (iommufd).
                                    "EPERM", "E2BIG", "EBADF", "EFAULT", "ENOTTY", "ESPIPE", "EDEADLK", "EMSGSIZE", "EADDRINUSE"]

    /// True for the soft "this domain does not fit this device" failure.
    public var isIncompatible: Bool { if case .incompatible = self { return true } else { return false } }

    public var message: String {
        switch self {
        case .invalidArgument(let m), .incompatible(let m), .notFound(let m), .busy(let m), .exists(let m),
             .noMemory(let m), .noSpace(let m), .overflow(let m), .outOfRange(let m), .notSupported(let m),
             .noDevice(let m), .timedOut(let m), .ioError(let m), .user(_, _, let m):
            return m
        }
    }

    public var description: String { "\(errnoName): \(message)" }
}
