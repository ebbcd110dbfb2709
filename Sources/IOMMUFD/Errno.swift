import Kernel

/// A failed user API call: the errno Linux returns (include/uapi/asm-generic/errno*.h) and
/// a message for people. Every ioctl answers 0 or one of these; nothing else escapes.
public struct Errno: Error, Equatable, Sendable, CustomStringConvertible {
    public let code: Int32
    public let message: String

    public init(_ code: Int32, _ message: String = "") { self.code = code; self.message = message }

    public init(_ error: IOMMUError) { self.code = error.errno; self.message = error.message }

    public static func == (a: Errno, b: Errno) -> Bool { a.code == b.code }

    public static let EPERM: Int32 = 1
    public static let ENOENT: Int32 = 2
    public static let EIO: Int32 = 5
    public static let E2BIG: Int32 = 7
    public static let EBADF: Int32 = 9
    public static let ENOMEM: Int32 = 12
    public static let EFAULT: Int32 = 14
    public static let EBUSY: Int32 = 16
    public static let EEXIST: Int32 = 17
    public static let ENXIO: Int32 = 6
    public static let ENODEV: Int32 = 19
    public static let EINVAL: Int32 = 22
    public static let ENOTTY: Int32 = 25
    public static let ENOSPC: Int32 = 28
    public static let ESPIPE: Int32 = 29
    public static let ERANGE: Int32 = 34
    public static let EDEADLK: Int32 = 35
    public static let EOVERFLOW: Int32 = 75
    public static let EBADE: Int32 = 52
    public static let EBADFD: Int32 = 77
    public static let EMSGSIZE: Int32 = 90
    public static let EOPNOTSUPP: Int32 = 95
    public static let EADDRINUSE: Int32 = 98

    static func inval(_ m: String) -> Errno { Errno(EINVAL, m) }
    static func noent(_ m: String) -> Errno { Errno(ENOENT, m) }
    static func busy(_ m: String) -> Errno { Errno(EBUSY, m) }
    static func notsupp(_ m: String) -> Errno { Errno(EOPNOTSUPP, m) }
    static func fault(_ m: String) -> Errno { Errno(EFAULT, m) }
    static func nomem(_ m: String) -> Errno { Errno(ENOMEM, m) }

    /// The symbolic name (`EINVAL`), or the number.
    public var name: String {
        switch code {
        case Self.EPERM: return "EPERM"
        case Self.ENOENT: return "ENOENT"
        case Self.EIO: return "EIO"
        case Self.E2BIG: return "E2BIG"
        case Self.EBADF: return "EBADF"
        case Self.ENOMEM: return "ENOMEM"
        case Self.EFAULT: return "EFAULT"
        case Self.EBUSY: return "EBUSY"
        case Self.EEXIST: return "EEXIST"
        case Self.ENODEV: return "ENODEV"
        case Self.EINVAL: return "EINVAL"
        case Self.ENOTTY: return "ENOTTY"
        case Self.ENOSPC: return "ENOSPC"
        case Self.ESPIPE: return "ESPIPE"
        case Self.ERANGE: return "ERANGE"
        case Self.EDEADLK: return "EDEADLK"
        case Self.EOVERFLOW: return "EOVERFLOW"
        case Self.EBADFD: return "EBADFD"
        case Self.EMSGSIZE: return "EMSGSIZE"
        case Self.EOPNOTSUPP: return "EOPNOTSUPP"
        case Self.EADDRINUSE: return "EADDRINUSE"
        case 110: return "ETIMEDOUT"
        default: return "errno \(code)"
        }
    }

    public var description: String { message.isEmpty ? name : "\(name): \(message)" }

    /// The same failure as the core's error type (simulation steps carry it).
    public var iommuError: IOMMUError { .user(errno: code, name: name, message: message) }
}
